using Haven.Agent;
using Haven.Protocol;
using Xunit;

namespace Haven.Server.Tests;

/// <summary>The server counts its answer times per route, and shows them (with its memory) to the provider only.</summary>
public sealed class RequestMetricsTests
{
    private static readonly CancellationToken None = CancellationToken.None;

    [Fact]
    public async Task AnswerTimes_AreCountedPerRoute_WithPercentiles_AndLongPollsApart()
    {
        await using var server = await TestServer.StartAsync();
        using var api = server.AdminApi();
        await api.SendAsync<object?>(HttpMethod.Delete, "api/v1/server/metrics", null, None);
        for (int i = 0; i < 50; i++)
        {
            await api.GetAsync<HealthInfo>("api/v1/health", None);
        }

        var tenant = await server.CreateTenantAsync();
        var agent = await server.EnrolAsync(tenant.Id, "m1");
        using (var agentApi = AgentClient.Connect(agent))
        {
            await agentApi.PostAsync<PollResponse>("api/v1/agent/poll", new PollRequest(1), None); // waits a second: no job
        }

        await Assert.ThrowsAsync<Haven.Core.HavenException>(() => api.GetAsync<object>("api/v1/no/such/path", None));
        var metrics = await api.GetAsync<ServerMetrics>("api/v1/server/metrics", None);
        var health = metrics.Routes.Single(r => r.Route == "/api/v1/health");
        Assert.Equal(50, health.Count);
        Assert.Equal(0, health.Errors);
        Assert.True(health.P50Ms > 0 && health.P50Ms <= health.P95Ms && health.P95Ms <= health.P99Ms && health.P99Ms <= health.MaxMs, health.ToString());
        var poll = metrics.Routes.Single(r => r.Route == "/api/v1/agent/poll");
        Assert.True(poll.P50Ms >= 900, poll.ToString());
        Assert.True(metrics.All.MaxMs < poll.MaxMs, "the long poll is not among the others' answer times");
        Assert.Single(metrics.Routes, r => r.Route == "(no route)");
        Assert.True(metrics.PeakWorkingSetBytes >= metrics.WorkingSetBytes / 2 && metrics.WorkingSetBytes > 10 << 20);

        // Only the provider sees them.
        using var other = new ApiClient(server.Server.Url, server.Server.Ca.Certificate, bearerToken: await TenantAdminTokenAsync(server, tenant.Id));
        var refused = await Assert.ThrowsAsync<Haven.Core.HavenException>(() => other.GetAsync<ServerMetrics>("api/v1/server/metrics", None));
        Assert.Equal(Haven.Core.ErrorCode.AccessDenied, refused.Code);
    }

    private static async Task<string> TenantAdminTokenAsync(TestServer server, string tenantId)
    {
        using var api = server.AdminApi();
        await api.PostAsync<AdminInfo>("api/v1/admins", new CreateAdminRequest("metrics-admin", "a long password 2", "admin", tenantId), None);
        return (await api.PostAsync<LoginResponse>("api/v1/auth/token", new LoginRequest("metrics-admin", "a long password 2"), None)).Token;
    }
}
