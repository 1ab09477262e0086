import sys

from ft_scaling.train.main import main

sys.exit(main())
