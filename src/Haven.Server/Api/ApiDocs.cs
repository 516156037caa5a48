using Haven.Protocol;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.OpenApi;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.OpenApi;

namespace Haven.Server.Api;

/// <summary>
/// The OpenAPI description of <c>/api/v1</c>, served at <see cref="Path"/>: every endpoint names its tag (who calls
/// it), a summary, the type of its answer and the errors it gives.
/// </summary>
internal static class ApiDocs
{
    public const string Path = "/api/v1/openapi.json";

    /// <summary>Open endpoints: no credentials.</summary>
    public const string Open = "open";

    /// <summary>Administrators: <c>Authorization: Bearer</c> with an API token.</summary>
    public const string Admin = "admin";

    /// <summary>Enrolled agents: mutual TLS with a client certificate from the server's CA.</summary>
    public const string Agent = "agent";

    public static void AddHavenOpenApi(this IServiceCollection services) =>
        services.AddOpenApi("v1", o => o.AddOperationTransformer((operation, context, _) =>
        {
            // Handlers that read a route value from the request (not as a parameter) still take it in their path.
            foreach (string segment in (context.Description.RelativePath ?? "").Split('/'))
            {
                if (segment.StartsWith('{') && segment.EndsWith('}'))
                {
                    string name = segment[1..^1];
                    operation.Parameters ??= [];
                    if (!operation.Parameters.Any(p => p.Name == name && p.In == ParameterLocation.Path))
                    {
                        operation.Parameters.Add(new OpenApiParameter { Name = name, In = ParameterLocation.Path, Required = true, Schema = new OpenApiSchema { Type = JsonSchemaType.String } });
                    }
                }
            }

            return Task.CompletedTask;
        }).AddDocumentTransformer((document, _, _) =>
        {
            document.Info.Title = "Haven server API";
            document.Info.Version = "v1";
            document.Info.Description =
                "The administration and agent API of a Haven server, over HTTPS only. Endpoints tagged 'admin' take "
                + "'Authorization: Bearer TOKEN' with an administrator's API token (POST /api/v1/auth/token issues one); "
                + "endpoints tagged 'agent' take a client certificate issued by this server's CA at enrolment (mutual TLS); "
                + "endpoints tagged 'open' take neither. Errors are JSON objects {error, message, hint}. A refused "
                + "authentication answers 401 (429 once a source has failed too often) and is recorded.";
            return Task.CompletedTask;
        }));

    public static void MapHavenOpenApi(this WebApplication app) =>
        app.MapOpenApi("/api/{documentName}/openapi.json").WithTags(Open);

    /// <summary>An endpoint that answers <typeparamref name="T"/> as JSON with <paramref name="status"/>.</summary>
    public static RouteHandlerBuilder Returns<T>(this RouteHandlerBuilder endpoint, string tag, string summary, int status = StatusCodes.Status200OK) =>
        endpoint.Describe(tag, summary).Produces<T>(status);

    /// <summary>An endpoint that answers 204 with no body.</summary>
    public static RouteHandlerBuilder ReturnsNothing(this RouteHandlerBuilder endpoint, string tag, string summary) =>
        endpoint.Describe(tag, summary).Produces(StatusCodes.Status204NoContent);

    private static RouteHandlerBuilder Describe(this RouteHandlerBuilder endpoint, string tag, string summary)
    {
        endpoint.WithTags(tag).WithSummary(summary).Produces<ApiError>(StatusCodes.Status400BadRequest);
        return tag == Open
            ? endpoint
            : endpoint.Produces<ApiError>(StatusCodes.Status401Unauthorized).Produces<ApiError>(StatusCodes.Status403Forbidden).Produces<ApiError>(StatusCodes.Status404NotFound).Produces<ApiError>(StatusCodes.Status429TooManyRequests);
    }
}
