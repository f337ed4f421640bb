"""``python -m foundation_stereo_ros.tools.benchmark``: the foundation-stereo-benchmark command."""
import sys

from .cli import main

sys.exit(main())
