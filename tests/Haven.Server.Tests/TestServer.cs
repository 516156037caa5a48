using Haven.Agent;
using Haven.Protocol;
using Haven.Storage;
using Microsoft.Extensions.Logging;

namespace Haven.Server.Tests;

/// <summary>
/// A Haven server in this process (real Kestrel, real TLS on loopback, a real management database) with a fresh
/// data folder, and helpers to make tenants, administrators' stores and enrolled agents.
/// </summary>
public sealed class TestServer : IAsyncDisposable
{
    private readonly string _root;

    private TestServer(string root, HavenServer server)
    {
        _root = root;
        Server = server;
    }

    public HavenServer Server { get; }

    public string Root => _root;

    public string AdminToken => Server.FirstAdmin!.ApiToken;

    /// <summary>Starts a server on SQLite, or on <paramref name="database"/> (a PostgreSQL connection string).</summary>
    public static async Task<TestServer> StartAsync(string? database = null, string? repositories = null)
    {
        string root = Path.Combine(Path.GetTempPath(), "haven-srv-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(root);
        try
        {
            var server = await HavenServer.StartAsync(new ServerOptions
            {
                DataDirectory = Path.Combine(root, "data"),
                Listen = "127.0.0.1:0",
                Database = database,
                Repositories = repositories,
                LogLevel = LogLevel.Error,
            }, CancellationToken.None);
            return new TestServer(root, server);
        }
        catch
        {
            Directory.Delete(root, recursive: true);
            throw;
        }
    }

    public ApiClient AdminApi(string? token = null) => new(Server.Url, Server.Ca.Certificate, bearerToken: token ?? AdminToken);

    public async Task<TenantInfo> CreateTenantAsync(string? name = null)
    {
        using var api = AdminApi();
        return await api.PostAsync<TenantInfo>("api/v1/tenants", new CreateTenantRequest(name ?? "t" + Guid.NewGuid().ToString("N")[..10]), CancellationToken.None);
    }

    /// <summary>The tenant's repository as its administrators reach it.</summary>
    public HttpStore AdminStore(string tenantId, string? token = null) =>
        new($"haven:{Server.Url}{tenantId}", _ => Task.FromResult((AdminApi(token), HttpStore.TenantBasePath(tenantId))));

    /// <summary>Enrols a new agent in <paramref name="tenantId"/>, its state in a new folder.</summary>
    public async Task<AgentState> EnrolAsync(string tenantId, string? name = null)
    {
        using var api = AdminApi();
        name ??= "c" + Guid.NewGuid().ToString("N")[..10];
        var token = await api.PostAsync<EnrollmentTokenInfo>($"api/v1/tenants/{tenantId}/enrollment-tokens", new CreateEnrollmentTokenRequest(name), CancellationToken.None);
        var state = new AgentState(Path.Combine(_root, "agents", name));
        await AgentClient.EnrollAsync(state, Server.Url, token.Token, name, CancellationToken.None);
        return state;
    }

    public async ValueTask DisposeAsync()
    {
        await Server.DisposeAsync();
        try
        {
            Directory.Delete(_root, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>One server for a test class (xunit class fixture).</summary>
public sealed class ServerFixture : Xunit.IAsyncLifetime
{
    public TestServer Server { get; private set; } = null!;

    public async Task InitializeAsync() => Server = await TestServer.StartAsync();

    public async Task DisposeAsync() => await Server.DisposeAsync();
}
