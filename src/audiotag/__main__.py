from audiotag.cli import main

raise SystemExit(main())
