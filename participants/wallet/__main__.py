from participants.service import base_parser, serve, server_tls
from participants.wallet.app import create_app

if __name__ == "__main__":
    args = base_parser("the wallet sample participant", 8101).parse_args()
    tls = server_tls(args)  # a bad --tls-* option: one line, exit 2
    serve(create_app(args.database_url), args.host, args.port, tls)
