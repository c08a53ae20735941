import sys

from adamllm.cli import main

sys.exit(main())
