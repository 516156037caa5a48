using Haven.Core;
using Haven.Protocol;
using Haven.Repository.Crypto;

namespace Haven.Cli.Infrastructure;

/// <summary>A tenant's hosted repository as its administrators reach it through the API.</summary>
internal static class TenantRepository
{
    /// <summary>The repository of <paramref name="tenantId"/> over <paramref name="api"/> (which stays the caller's).</summary>
    public static HttpStore Open(ApiClient api, string tenantId) =>
        new($"haven:{api.Server}{tenantId}", _ => Task.FromResult((api, HttpStore.TenantBasePath(tenantId))), ownsClient: false);

    /// <summary>
    /// Adds a key file opened by a new random 32-byte secret, for an enrolment token to carry to agents
    /// (docs/key-model.md). The secret is made here and leaves this process only inside the token.
    /// </summary>
    public static async Task<(string KeyId, byte[] Secret)> AddAgentKeyAsync(ApiClient api, string tenantId, string password, CancellationToken ct)
    {
        byte[] secret = System.Security.Cryptography.RandomNumberGenerator.GetBytes(32);
        await using var store = Open(api, tenantId);
        await using var repo = await Haven.Repository.Repository.OpenAsync(store, password, null, ct).ConfigureAwait(false);
        var keyId = await repo.AddKeyAsync(Base64Url.Encode(secret), KdfParameters.ForRandomSecret(), ct).ConfigureAwait(false);
        return (keyId.ToString(), secret);
    }
}
