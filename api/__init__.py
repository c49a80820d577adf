"""The GraphQL surface: root fields, permissions, schema extensions (above the resolvers)."""
