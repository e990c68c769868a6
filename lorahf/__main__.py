from lorahf.cli import main

main()
