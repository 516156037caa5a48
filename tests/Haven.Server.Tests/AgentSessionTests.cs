using Haven.Agent;
using Haven.Core;
using Haven.Protocol;
using Xunit;

namespace Haven.Server.Tests;

/// <summary>An agent's authentication is kept with its connection, but no longer than a revocation.</summary>
public sealed class AgentSessionTests
{
    private static readonly CancellationToken None = CancellationToken.None;

    [Fact]
    public async Task ARevokedAgent_IsRefusedOnItsNextRequest_OverTheConnectionItAlreadyHas()
    {
        await using var server = await TestServer.StartAsync();
        var tenant = await server.CreateTenantAsync();
        var agent = await server.EnrolAsync(tenant.Id, "kept1");
        var bystander = await server.EnrolAsync(tenant.Id, "kept2");
        using var api = AgentClient.Connect(agent);
        using var other = AgentClient.Connect(bystander);
        for (int i = 0; i < 3; i++)
        {
            Assert.Empty(await api.GetAsync<List<PlanInfo>>("api/v1/agent/plans", None));
            await other.GetAsync<List<PlanInfo>>("api/v1/agent/plans", None);
        }

        using (var admin = server.AdminApi())
        {
            await admin.PostAsync<RevokedClient>($"api/v1/tenants/{tenant.Id}/clients/{agent.LoadIdentity().ClientId}/revoke", new { }, None);
        }

        var refused = await Assert.ThrowsAsync<HavenException>(() => api.GetAsync<List<PlanInfo>>("api/v1/agent/plans", None));
        Assert.Equal(ErrorCode.AccessDenied, refused.Code);
        Assert.Contains("revoked", refused.Message);
        await other.GetAsync<List<PlanInfo>>("api/v1/agent/plans", None); // the others go on
    }
}
