"""`python -m lramlab.train ...` (and `torchrun -m lramlab.train ...`)."""
import sys

from lramlab.train import main

sys.exit(main())
