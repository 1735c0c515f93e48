from bridge_api.cli import main

raise SystemExit(main())
