from pgbg.cli import main

main()
