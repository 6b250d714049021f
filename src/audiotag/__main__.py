from audiotag.cli.main import main

raise SystemExit(main())
