// Starts GraphiQL (served by Tally from /graphiql/static/) against this page's own
// endpoint. The headers pane feeds both transports: queries and mutations are
// POSTed with its headers, and each subscription opens a graphql-transport-ws
// connection whose connection_init payload is that same object
// ({"Authorization": "Bearer ..."}).
//
// Subscriptions use the standalone graphql-ws build (window.graphqlWs), not the
// copy inside graphiql.min.js: that older copy rejects a connection_ack whose
// payload is null, which is what Tally sends.
"use strict";

(function start() {
  const endpoint = window.location.origin + window.location.pathname;
  const socketEndpoint = endpoint.replace(/^http/, "ws");
  const defaultQuery = `# Tally: live counts of loads and invoices.
#
# Put a bearer token in the Headers pane below; print one with
#   python main.py token --org org_demo --role admin
# Ctrl-Enter runs the query; the book icon opens the schema's documentation.

query Stats {
  organizationStats(orgId: "org_demo") {
    version
    loads { open assigned completed canceled total }
    invoices { missingData draft billed pendingPayment paid void total }
  }
}
`;
  const defaultHeaders = `{
  "Authorization": "Bearer <token>"
}`;

  function isSubscription(documentAST, operationName) {
    const operations = (documentAST?.definitions ?? []).filter((d) => d.kind === "OperationDefinition");
    const chosen = operationName ? operations.find((d) => d.name?.value === operationName) : operations[0];
    return chosen?.operation === "subscription";
  }

  function closeError(error) {
    if (error && typeof error.code === "number") {
      return new Error(`WebSocket closed: ${error.code} ${error.reason || ""}`.trim());
    }
    return error instanceof Error ? error : new Error(String(error));
  }

  // An Observable (GraphiQL accepts one) over one connection, closed when GraphiQL stops it.
  function subscription(params, headers) {
    return {
      subscribe(observer) {
        const client = graphqlWs.createClient({ url: socketEndpoint, connectionParams: headers ?? {} });
        const stop = client.subscribe(params, {
          next: (result) => observer.next(result),
          error: (error) => observer.error(closeError(error)),
          complete: () => observer.complete(),
        });
        return {
          unsubscribe() {
            stop();
            client.dispose();
          },
        };
      },
    };
  }

  const overHttp = GraphiQL.createFetcher({ url: endpoint });
  function fetcher(params, options) {
    if (isSubscription(options?.documentAST, params.operationName)) {
      return subscription(params, options?.headers);
    }
    return overHttp(params, options);
  }

  function TallyGraphiQL() {
    const [query, setQuery] = React.useState(undefined);
    const explorer = GraphiQLPluginExplorer.useExplorerPlugin({ query, onEdit: setQuery });
    return React.createElement(GraphiQL, {
      fetcher,
      query,
      onEditQuery: setQuery,
      defaultQuery,
      defaultHeaders,
      defaultEditorToolsVisibility: "headers",
      isHeadersEditorEnabled: true,
      // A token is a credential: kept for this tab only, like the dashboard's session.
      storage: window.sessionStorage,
      shouldPersistHeaders: true,
      plugins: [explorer],
    });
  }

  ReactDOM.render(React.createElement(TallyGraphiQL), document.getElementById("graphiql"));
})();
