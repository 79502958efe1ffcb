from oig.cli import main

raise SystemExit(main())
