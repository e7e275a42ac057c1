from obpipe.story.cli import main

raise SystemExit(main())
