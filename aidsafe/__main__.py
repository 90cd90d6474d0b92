from aidsafe.cli import main

main()
