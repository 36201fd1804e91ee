from picovlm.cli import main

raise SystemExit(main())
