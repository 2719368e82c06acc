from llmhost.local.runner import main

raise SystemExit(main())
