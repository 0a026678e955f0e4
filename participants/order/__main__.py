import os

from participants.order.app import Peers, create_app
from participants.service import base_parser, serve, server_tls

if __name__ == "__main__":
    parser = base_parser("the order sample service", 8103)
    parser.add_argument("--coordinator-url", default="http://127.0.0.1:36789")
    parser.add_argument("--wallet-url", default="http://127.0.0.1:8101")
    parser.add_argument("--inventory-url", default="http://127.0.0.1:8102")
    parser.add_argument(
        "--notify-url",
        default=None,
        help="the notify sample (e.g. http://127.0.0.1:8104): a paid order mails its customer"
        " through it; without it, no mail",
    )
    parser.add_argument(
        "--coordinator-key",
        default=os.environ.get("ORDER_COORDINATOR_KEY"),
        help="API key for the coordinator (env ORDER_COORDINATOR_KEY)",
    )
    args = parser.parse_args()
    tls = server_tls(args)  # a bad --tls-* option: one line, exit 2
    peers = Peers(
        coordinator=args.coordinator_url,
        wallet=args.wallet_url,
        inventory=args.inventory_url,
        # Its own branch's URLs: the coordinator calls them over HTTPS when it serves HTTPS.
        public=f"{'https' if tls else 'http'}://{args.host}:{args.port}",
        coordinator_key=args.coordinator_key,
        notify=args.notify_url,
    )
    serve(create_app(args.database_url, peers), args.host, args.port, tls)
