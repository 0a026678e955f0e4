from participants.notify.app import Smtp, create_app
from participants.service import base_parser, serve, server_tls

if __name__ == "__main__":
    parser = base_parser("the notify sample service", 8104)
    parser.add_argument("--smtp-host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=8105)
    parser.add_argument("--mail-from", default="shop@example.test")
    parser.add_argument(
        "--coordinator-url",
        default="http://127.0.0.1:36789",
        help="where GET /mails links each mail's message (notify itself only receives calls)",
    )
    args = parser.parse_args()
    tls = server_tls(args)  # a bad --tls-* option: one line, exit 2
    smtp = Smtp(host=args.smtp_host, port=args.smtp_port, sender=args.mail_from)
    serve(
        create_app(args.database_url, smtp, coordinator=args.coordinator_url),
        args.host,
        args.port,
        tls,
    )
