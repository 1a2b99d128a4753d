"""``datapunk-stream`` / ``python -m datapunk_stream``: run the Stream service."""

from datapunk_shared.rpc.server import main_for

from datapunk_stream.service import SPEC

main = main_for(SPEC)

if __name__ == "__main__":
    main()
