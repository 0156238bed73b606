"""The `wechat` channel: WeChat Pay API v3, native payments (the merchant shows a QR code).

`protocol` holds the wire protocol (shared: the API, its codes table), with `envelope`
(signatures, AES-GCM resources, notification envelopes) and `bill` (the trade bill); `adapter`
the gateway's side, `simulator` WeChat Pay's side, `devkeys` the development keys. See
`adapters.wechat.protocol` for the protocol.
"""
