from rayexp.cli import main

raise SystemExit(main())
