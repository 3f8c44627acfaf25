"""``caloforge`` with the test-only toy family registered, as a script: what DDP tests launch, since
Lightning starts the other ranks by running the same script again."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from caloforge.cli import main
from caloforge.families import register

register("toy-gauss", "toy_family")

if __name__ == "__main__":
    main()
