import sys

from rhm_jax.cli import main

sys.exit(main())
