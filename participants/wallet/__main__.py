from participants.service import base_parser, serve
from participants.wallet.app import create_app

if __name__ == "__main__":
    args = base_parser("the wallet sample participant", 8101).parse_args()
    serve(create_app(args.database_url), args.host, args.port)
