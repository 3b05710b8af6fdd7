from sqlprobe.cli import main

main()
