import sys

from ft_scaling import cli

sys.exit(cli.main(["train", *sys.argv[1:]]))
