from mufasa_cli.cli.app import main

main()
