from llmhost_local.runner import main

raise SystemExit(main())
