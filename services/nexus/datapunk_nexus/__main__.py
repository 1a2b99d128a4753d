"""``datapunk-nexus`` / ``python -m datapunk_nexus``: run the Nexus service."""

from datapunk_shared.rpc.server import main_for

from datapunk_nexus.service import SPEC

main = main_for(SPEC)

if __name__ == "__main__":
    main()
