"""Entry of the nvidia-smi stand-in (gpu/nvidia-smi): run beside lib/, so `lib` imports as is."""

import sys

from lib.nvidia_smi import main

sys.exit(main(sys.argv[1:]))
