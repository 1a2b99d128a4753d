"""``datapunk-lake`` / ``python -m datapunk_lake``: run the Lake service."""

from datapunk_shared.rpc.server import main_for

from datapunk_lake.service import SPEC

main = main_for(SPEC)

if __name__ == "__main__":
    main()
