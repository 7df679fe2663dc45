"""`python -m modelcut`: the same as the `modelcut` console script."""
from modelcut.cli import main

raise SystemExit(main())
