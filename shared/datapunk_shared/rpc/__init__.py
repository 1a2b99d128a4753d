"""The gRPC side of the shared library: status mapping, the server interceptor, the
service runtime and the typed client facade. Domain code never imports this package."""
