using System.Net;
using System.Text.Json;
using Xunit;

namespace Haven.Server.Tests;

/// <summary>The OpenAPI document describes every route the server answers, each with who may call it.</summary>
public sealed class OpenApiTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private static readonly string[] OpenRoutes = ["/api/v1/health", "/api/v1/ca", "/api/v1/enroll", "/api/v1/auth/token"];

    [Fact]
    public async Task TheDocument_IsOpen_AndDescribesEveryRoute_WithItsCallersAndAnswers()
    {
        var server = fixture.Server.Server;
        using var http = new HttpClient(new SocketsHttpHandler { SslOptions = { RemoteCertificateValidationCallback = Haven.Protocol.Pinning.ServerValidator(server.Ca.Certificate) } }) { BaseAddress = server.Url };
        using var response = await http.GetAsync("api/v1/openapi.json"); // no token, no certificate
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        using var document = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        var root = document.RootElement;
        Assert.StartsWith("3.", root.GetProperty("openapi").GetString());
        Assert.Equal("v1", root.GetProperty("info").GetProperty("version").GetString());

        var documented = new Dictionary<(string, string), JsonElement>();
        foreach (var path in root.GetProperty("paths").EnumerateObject())
        {
            foreach (var operation in path.Value.EnumerateObject())
            {
                documented[(operation.Name.ToUpperInvariant(), path.Name)] = operation.Value;
            }
        }

        var routes = server.Routes().Where(r => r.Route != "/api/{documentName}/openapi.json").ToList();
        Assert.True(routes.Count >= 45, $"only {routes.Count} routes");
        foreach (var (method, route) in routes)
        {
            Assert.True(documented.TryGetValue((method, route), out var operation), $"{method} {route} is not in the document");
            string expectedTag = OpenRoutes.Contains(route) ? "open" : route.StartsWith("/api/v1/agent/", StringComparison.Ordinal) ? "agent" : "admin";
            Assert.Equal([expectedTag], operation.GetProperty("tags").EnumerateArray().Select(t => t.GetString()));
            Assert.False(string.IsNullOrWhiteSpace(operation.GetProperty("summary").GetString()), $"{method} {route} has no summary");
            var answers = operation.GetProperty("responses").EnumerateObject().Select(r => r.Name).ToList();
            Assert.Contains(answers, a => a.StartsWith('2'));
            if (expectedTag != "open")
            {
                Assert.Contains("401", answers);
                Assert.Contains("404", answers);
            }

            foreach (var parameter in route.Split('/').Where(s => s.StartsWith('{')))
            {
                string name = parameter.Trim('{', '}');
                Assert.Contains(operation.GetProperty("parameters").EnumerateArray(), p => p.GetProperty("name").GetString() == name && p.GetProperty("in").GetString() == "path");
            }
        }

        Assert.Equal(routes.Count, documented.Count);
        // Request bodies name their schema, so a client can be generated from the document.
        var createPlan = documented[("POST", "/api/v1/tenants/{tenant}/plans")];
        Assert.Equal("#/components/schemas/PlanSpec", createPlan.GetProperty("requestBody").GetProperty("content").GetProperty("application/json").GetProperty("schema").GetProperty("$ref").GetString());
        var planSpec = root.GetProperty("components").GetProperty("schemas").GetProperty("PlanSpec").GetProperty("properties");
        Assert.True(planSpec.TryGetProperty("bandwidth_bytes_per_second", out _), planSpec.ToString());
    }
}
