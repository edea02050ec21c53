from llmpipe.cli import main

main()
