from fewsam.cli import main

main()
