"""``python -m tollgate.config``: print the JSON Schema of the config file (config/schema.json is its output)."""

from tollgate.config.schema import main

raise SystemExit(main())
