from audiotag.fetch.network import share_offline_mode

share_offline_mode()  # AUDIOTAG_OFFLINE=1 -> HF_HUB_OFFLINE=1 before huggingface_hub reads it (at import)

from audiotag.cli.main import main  # noqa: E402

raise SystemExit(main())
