from llmhost_cli.commands import main

raise SystemExit(main())
