import sys

from perfd.daemon import main

sys.exit(main())
