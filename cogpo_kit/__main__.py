from cogpo_kit.cli import main
import sys
sys.exit(main())
