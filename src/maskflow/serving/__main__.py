import sys

from maskflow.serving.client import main

sys.exit(main())
