from normcli.cli import main

main()
