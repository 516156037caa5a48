using Haven.Storage;
using Haven.Storage.Tests;
using Xunit;

namespace Haven.Server.Tests;

/// <summary>
/// A hosted repository, as administrators reach it over HTTPS, keeps the whole store contract. Each test gets a new
/// tenant, hence an empty repository, on one server.
/// </summary>
public sealed class HostedStoreConformanceTests(ServerFixture fixture) : StoreConformanceTests, IClassFixture<ServerFixture>
{
    protected override async Task<IStore?> CreateStoreAsync()
    {
        var tenant = await fixture.Server.CreateTenantAsync();
        return fixture.Server.AdminStore(tenant.Id);
    }
}
