from sparseehr.cli import main

raise SystemExit(main())
