from participants.inventory.app import create_app
from participants.service import base_parser, serve, server_tls

if __name__ == "__main__":
    args = base_parser("the inventory sample participant", 8102).parse_args()
    tls = server_tls(args)  # a bad --tls-* option: one line, exit 2
    serve(create_app(args.database_url), args.host, args.port, tls)
