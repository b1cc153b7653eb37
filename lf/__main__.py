from lf.cli import main

main()
