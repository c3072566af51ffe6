from recall_transcribe.cli import main

raise SystemExit(main())
