from normcli.cli import main

# guarded: Dask's worker processes start by importing the main module of the process
if __name__ == "__main__":
    main()
